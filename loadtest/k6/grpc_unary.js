// gRPC unary: meshgate.v1.Inference/ChatCompletion, a small prompt, a small answer.
// The service is found by server reflection (no .proto files needed at run time).
//   GRPC_ADDR  host:port
import grpc from 'k6/net/grpc';
import { check } from 'k6';
import { MODEL, options as baseOptions, requestOk, summary, setup, teardown } from './lib.js';

export const options = baseOptions();

const client = new grpc.Client();
let connected = false;

const request = {
  model: MODEL,
  messages: [{ role: 'user', text: 'Say hello in a few words.' }],
  max_tokens: parseInt(__ENV.MAX_TOKENS || '16', 10),
};

export default function () {
  if (!connected) {
    client.connect(__ENV.GRPC_ADDR, { plaintext: true, reflect: true });
    connected = true;
  }
  const res = client.invoke('meshgate.v1.Inference/ChatCompletion', request);
  const passed = check(res, {
    'status OK': (r) => r && r.status === grpc.StatusOK,
    'a whole completion': (r) =>
      r && r.message && r.message.choices && r.message.choices.length > 0,
  });
  requestOk.add(passed);
}

export { setup, teardown };
export const handleSummary = summary;
