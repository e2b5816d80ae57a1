// REST embeddings: one short input per request.
import http from 'k6/http';
import { check } from 'k6';
import { MODEL, options as baseOptions, requestOk, summary, setup, teardown } from './lib.js';

export const options = baseOptions({ http_req_failed: ['rate==0'] });

const url = `${__ENV.BASE_URL}/v1/embeddings`;
const body = JSON.stringify({ model: MODEL, input: 'The quick brown fox jumps over the lazy dog.' });
const params = { headers: { 'content-type': 'application/json' } };

export default function () {
  const res = http.post(url, body, params);
  const passed = check(res, {
    'status 200': (r) => r.status === 200,
    'a vector': (r) => {
      try {
        return r.json().data[0].embedding.length > 0;
      } catch (e) {
        return false;
      }
    },
  });
  requestOk.add(passed);
}

export { setup, teardown };
export const handleSummary = summary;
