// REST chat completions through meshgate (or straight at a node, for the baseline).
//   k6 run -e TARGET=http://127.0.0.1:8080 -e MODE=unary|stream -e VUS=8 -e DURATION=10s rest_chat.js
// MODE=stream asks for SSE; k6 reads the whole stream, so the duration is first byte
// to [DONE], the same span the gRPC script measures for a stream.
import http from 'k6/http';
import { check } from 'k6';
import { Trend } from 'k6/metrics';

const TARGET = __ENV.TARGET || 'http://127.0.0.1:8080';
const MODE = __ENV.MODE || 'unary';
const MODEL = __ENV.MODEL || 'llama3.2';

export const options = {
  vus: Number(__ENV.VUS || 8),
  duration: __ENV.DURATION || '10s',
  summaryTrendStats: ['avg', 'p(50)', 'p(95)', 'p(99)', 'max'],
};

const chat = new Trend('chat_ms', true);

const body = JSON.stringify({
  model: MODEL,
  stream: MODE === 'stream',
  messages: [{ role: 'user', content: 'hello from k6 over REST' }],
});
const params = { headers: { 'content-type': 'application/json' } };

export default function () {
  const res = http.post(`${TARGET}/v1/chat/completions`, body, params);
  const ok = check(res, {
    'status 200': (r) => r.status === 200,
    'complete': (r) => (MODE === 'stream' ? r.body.includes('[DONE]') : r.body.includes('"choices"')),
  });
  if (ok) chat.add(res.timings.duration);
}
