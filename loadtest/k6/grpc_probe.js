// Does the gateway serve meshgate's gRPC API? One connection with server reflection,
// then grpc.health.v1 and a look for meshgate.v1.Inference. Exits 0 only if all hold;
// the runner skips the gRPC scenarios otherwise.
//   GRPC_ADDR  host:port (meshgate serves gRPC on its one listener, h2c)
import grpc from 'k6/net/grpc';
import { check } from 'k6';

export const options = {
  iterations: 1,
  vus: 1,
  thresholds: { checks: ['rate==1'] },
};

export default function () {
  const client = new grpc.Client();
  let served = false;
  try {
    client.connect(__ENV.GRPC_ADDR, { plaintext: true, reflect: true, timeout: '3s' });
    const health = client.invoke('grpc.health.v1.Health/Check', { service: '' });
    served = health && health.status === grpc.StatusOK;
    if (served) {
      const models = client.invoke('meshgate.v1.Inference/ListModels', {});
      served = models && models.status === grpc.StatusOK;
    }
  } catch (e) {
    console.log(`gRPC not served: ${e}`);
  }
  check(served, { 'meshgate.v1 served with reflection and health': (s) => s });
  client.close();
}

export function handleSummary() {
  return {};
}
