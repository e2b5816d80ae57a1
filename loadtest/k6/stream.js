// REST chat completions, streamed (SSE). Per request: time to first token, the number
// of chunks, and completeness: a stream must end with `data: [DONE]` and carry no
// in-band error event, else the request counts as failed.
//
// k6 reads a response whole, so time to first token is k6's time to first byte:
// meshgate sends its response head only once the node's first body byte arrived, and
// the simulated node (ttft 0) sends its first event with its head, so on both paths
// the first byte is the first event. The runner's stream check measures per-event
// arrival times on a real socket (coalescing) at low load.
import http from 'k6/http';
import { check } from 'k6';
import { Counter, Rate, Trend } from 'k6/metrics';
import { MODEL, options as baseOptions, requestOk, summary, setup, teardown } from './lib.js';

export const options = baseOptions({
  http_req_failed: ['rate==0'],
  stream_complete: ['rate==1'],
});

const ttft = new Trend('ttft', true);
const chunks = new Trend('chunks');
const complete = new Rate('stream_complete');
const content = new Counter('content_chunks');

const url = `${__ENV.BASE_URL}/v1/chat/completions`;
const expected = parseInt(__ENV.EXPECT_CHUNKS || '0', 10);
const body = JSON.stringify({
  model: MODEL,
  messages: [{ role: 'user', content: 'Tell me a short story.' }],
  stream: true,
});
const params = {
  headers: { 'content-type': 'application/json', accept: 'text/event-stream' },
  timeout: __ENV.REQUEST_TIMEOUT || '60s',
};

export default function () {
  const res = http.post(url, body, params);
  const text = typeof res.body === 'string' ? res.body : '';
  const events = text.split('\n\n').filter((e) => e.startsWith('data: '));
  const done = events.length > 0 && events[events.length - 1] === 'data: [DONE]';
  const errored = events.some((e) => e.startsWith('data: {"error"'));
  const ok = res.status === 200 && done && !errored && (expected === 0 || events.length === expected);
  complete.add(ok);
  if (res.status === 200) {
    ttft.add(res.timings.waiting);
    chunks.add(events.length);
    content.add(events.filter((e) => e.includes('"content":"') && !e.includes('"content":""')).length);
  }
  const passed = check(res, {
    'status 200': (r) => r.status === 200,
    'ends with [DONE], no error event': () => done && !errored,
    'every chunk arrived': () => expected === 0 || events.length === expected,
  });
  requestOk.add(passed);
}

export { setup, teardown };
export const handleSummary = summary;
