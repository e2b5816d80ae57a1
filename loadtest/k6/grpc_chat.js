// gRPC chat completions through meshgate, discovered through server reflection.
//   k6 run -e TARGET=127.0.0.1:8080 -e MODE=unary|stream -e VUS=8 -e DURATION=10s grpc_chat.js
// MODE=stream calls StreamChatCompletion and measures request to end of stream.
import grpc from 'k6/net/grpc';
import { check } from 'k6';
import { Counter, Trend } from 'k6/metrics';

const TARGET = __ENV.TARGET || '127.0.0.1:8080';
const MODE = __ENV.MODE || 'unary';
const MODEL = __ENV.MODEL || 'llama3.2';

export const options = {
  vus: Number(__ENV.VUS || 8),
  duration: __ENV.DURATION || '10s',
  summaryTrendStats: ['avg', 'p(50)', 'p(95)', 'p(99)', 'max'],
};

const chat = new Trend('chat_ms', true);
const failed = new Counter('chat_failed');
const client = new grpc.Client();

const request = {
  model: MODEL,
  messages: [{ role: 'user', text: 'hello from k6 over REST' }], // same prompt as rest_chat.js: same reply
};

export default function () {
  if (__ITER === 0) {
    client.connect(TARGET, { plaintext: true, reflect: true });
  }
  const start = Date.now();
  if (MODE === 'stream') {
    const stream = new grpc.Stream(client, 'meshgate.v1.Inference/StreamChatCompletion');
    let chunks = 0;
    stream.on('data', () => {
      chunks += 1;
    });
    stream.on('error', () => failed.add(1));
    stream.on('end', () => {
      if (check(chunks, { 'chunks received': (n) => n > 2 })) chat.add(Date.now() - start);
    });
    stream.write(request);
    stream.end();
  } else {
    const res = client.invoke('meshgate.v1.Inference/ChatCompletion', request);
    const ok = check(res, {
      'status OK': (r) => r && r.status === grpc.StatusOK,
      'has choices': (r) => r && r.message && r.message.choices.length > 0,
    });
    if (ok) chat.add(Date.now() - start);
    else failed.add(1);
  }
}
