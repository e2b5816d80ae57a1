// Baseline for k6's own gRPC client cost: grpc.health.v1 Check on meshgate (no node
// involved, a trivial handler), so a gRPC chat rate can be read against what this k6
// client can drive at all on the same machine.
//   k6 run -e TARGET=127.0.0.1:8080 -e VUS=8 -e DURATION=10s grpc_health.js
import grpc from 'k6/net/grpc';
import { check } from 'k6';
import { Trend } from 'k6/metrics';

const TARGET = __ENV.TARGET || '127.0.0.1:8080';

export const options = {
  vus: Number(__ENV.VUS || 8),
  duration: __ENV.DURATION || '10s',
  summaryTrendStats: ['avg', 'p(50)', 'p(95)', 'p(99)', 'max'],
};

const chat = new Trend('chat_ms', true);
const client = new grpc.Client();

export default function () {
  if (__ITER === 0) {
    client.connect(TARGET, { plaintext: true, reflect: true });
  }
  const start = Date.now();
  const res = client.invoke('grpc.health.v1.Health/Check', { service: '' });
  if (check(res, { 'SERVING': (r) => r && r.message && r.message.status === 'SERVING' })) {
    chat.add(Date.now() - start);
  }
}
