// REST chat completions, not streamed: a small prompt, a small answer.
//   BASE_URL  e.g. http://127.0.0.1:8080 (meshgate) or the simulated node itself; a
//             comma-separated list spreads the requests over several (replicas)
//   API_KEY   sent as `Authorization: Bearer` when set
import http from 'k6/http';
import { check } from 'k6';
import { MODEL, options as baseOptions, requestOk, summary, setup, teardown } from './lib.js';

export const options = baseOptions({ http_req_failed: ['rate==0'] });

const urls = __ENV.BASE_URL.split(',').map((base) => `${base}/v1/chat/completions`);
const body = JSON.stringify({
  model: MODEL,
  messages: [{ role: 'user', content: 'Say hello in a few words.' }],
  max_tokens: parseInt(__ENV.MAX_TOKENS || '16', 10),
});
const headers = { 'content-type': 'application/json' };
if (__ENV.API_KEY) {
  headers.authorization = `Bearer ${__ENV.API_KEY}`;
}
const params = { headers };

export default function () {
  const res = http.post(urls[(__VU + __ITER) % urls.length], body, params);
  const passed = check(res, {
    'status 200': (r) => r.status === 200,
    'a whole completion': (r) => {
      try {
        const j = r.json();
        return j.choices.length > 0 && typeof j.choices[0].message.content === 'string';
      } catch (e) {
        return false;
      }
    },
  });
  requestOk.add(passed);
}

export { setup, teardown };
export const handleSummary = summary;
