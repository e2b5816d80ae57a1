// gRPC server streaming: meshgate.v1.Inference/StreamChatCompletion. Per stream: time
// to first message, messages, and completeness (ends with status OK after a chunk with
// a finish_reason; an error status counts as a failed stream).
//   GRPC_ADDR  host:port
import grpc from 'k6/net/grpc';
import { check } from 'k6';
import { Rate, Trend } from 'k6/metrics';
import { MODEL, options as baseOptions, requestOk, summary, setup, teardown } from './lib.js';

export const options = baseOptions({ stream_complete: ['rate==1'] });

const ttft = new Trend('ttft', true);
const chunks = new Trend('chunks');
const complete = new Rate('stream_complete');
const duration = new Trend('stream_duration', true);

const client = new grpc.Client();
let connected = false;

const request = {
  model: MODEL,
  messages: [{ role: 'user', text: 'Tell me a short story.' }],
};

export default function () {
  if (!connected) {
    client.connect(__ENV.GRPC_ADDR, { plaintext: true, reflect: true });
    connected = true;
  }
  const started = Date.now();
  let first = 0;
  let count = 0;
  let finished = false;
  let failed = false;
  const stream = new grpc.Stream(client, 'meshgate.v1.Inference/StreamChatCompletion');
  stream.on('data', (chunk) => {
    if (count === 0) {
      first = Date.now();
    }
    count += 1;
    if (chunk.choices && chunk.choices.some((c) => c.finish_reason || c.finishReason)) {
      finished = true;
    }
  });
  stream.on('error', () => {
    failed = true;
  });
  stream.on('end', () => {
    const ok = finished && !failed;
    complete.add(ok);
    if (count > 0) {
      ttft.add(first - started);
      chunks.add(count);
    }
    duration.add(Date.now() - started);
    requestOk.add(check(ok, { 'stream complete': (v) => v }));
  });
  stream.write(request);
  stream.end();
}

export { setup, teardown };
export const handleSummary = summary;
