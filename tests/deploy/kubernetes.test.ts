/**
 * deploy/kubernetes/: every manifest parses, and holds what docs/deploy.md promises: probes on routes that
 * exist, a grace period longer than the drain, one port everywhere, selectors that match the pods, and an
 * InferencePool of the Gateway API Inference Extension's v1 API pointing at them.
 */
import { expect, test } from "bun:test";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { SERVE_SETTINGS } from "../../src/commands/serve-options.ts";

const DIR = join(import.meta.dir, "../../deploy/kubernetes");
// biome-ignore lint/suspicious/noExplicitAny: manifests are free-form YAML, checked field by field
type Doc = any;
const docs: Doc[] = readdirSync(DIR)
  .filter((f) => f.endsWith(".yaml"))
  .flatMap((f) => {
    const parsed = Bun.YAML.parse(readFileSync(join(DIR, f), "utf8"));
    return Array.isArray(parsed) ? parsed : [parsed];
  });
const find = (kind: string) => docs.find((d) => d.kind === kind) as Doc;

test("every manifest parses and names its kind and API", () => {
  expect(docs.map((d) => d.kind).sort()).toEqual([
    "Deployment",
    "HTTPRoute",
    "InferenceObjective",
    "InferenceObjective",
    "InferencePool",
    "Service",
  ]);
  for (const d of docs) {
    expect(typeof d.apiVersion).toBe("string");
    expect(typeof d.metadata.name).toBe("string");
  }
});

test("the Deployment: probes on the health routes, the drain inside the grace period, the LoRA dir as a volume", () => {
  const deployment = find("Deployment");
  const pod = deployment.spec.template;
  expect(deployment.spec.selector.matchLabels).toEqual(pod.metadata.labels);
  const [container] = pod.spec.containers;
  expect(container.readinessProbe.httpGet.path).toBe("/v1/health/ready");
  expect(container.livenessProbe.httpGet.path).toBe("/v1/health/live");
  expect(container.startupProbe.httpGet.path).toBe("/v1/health/live");
  const args: string[] = container.args;
  // Every flag given is a serve setting.
  for (const flag of args.filter((a) => a.startsWith("--")))
    expect(Object.keys(SERVE_SETTINGS)).toContain(flag.slice(2));
  const drain = Number(args[args.indexOf("--drain-timeout") + 1]);
  expect(pod.spec.terminationGracePeriodSeconds).toBeGreaterThan(drain);
  const port = Number(container.env.find((e: Doc) => e.name === "PORT").value);
  expect(container.ports).toEqual([{ name: "http", containerPort: port }]);
  expect(container.env.find((e: Doc) => e.name === "MULTILORA_ADMIN_KEY").valueFrom.secretKeyRef.name).toBe(
    "multilora-keys",
  );
  const mounts = Object.fromEntries(container.volumeMounts.map((m: Doc) => [m.mountPath, m]));
  // The image's entrypoint serves /models/engine and /models/lora.
  expect(readFileSync(join(import.meta.dir, "../../Dockerfile"), "utf8")).toContain(
    'ENTRYPOINT ["multilora", "serve", "/models/engine", "/models/lora", "--host", "0.0.0.0"]',
  );
  expect(mounts["/models/engine"].readOnly).toBe(true);
  expect(mounts["/models/lora"].readOnly).toBe(true);
  expect(container.resources.limits["nvidia.com/gpu"]).toBe(1);
});

test("the Service and the InferencePool select the pods on their port; the route sends /v1/ to the pool", () => {
  const pod = find("Deployment").spec.template;
  const port = find("Deployment").spec.template.spec.containers[0].ports[0].containerPort;
  const service = find("Service");
  expect(service.spec.selector).toEqual(pod.metadata.labels);
  expect(service.spec.ports[0].targetPort).toBe("http");

  const pool = find("InferencePool");
  expect(pool.apiVersion).toBe("inference.networking.k8s.io/v1");
  expect(pool.spec.selector.matchLabels).toEqual(pod.metadata.labels);
  expect(pool.spec.targetPorts).toEqual([{ number: port }]);
  expect(pool.spec.endpointPickerRef).toMatchObject({ name: "multilora-epp", port: { number: 9002 } });

  for (const objective of docs.filter((d) => d.kind === "InferenceObjective")) {
    expect(objective.spec.poolRef).toEqual({
      group: "inference.networking.k8s.io",
      kind: "InferencePool",
      name: pool.metadata.name,
    });
    expect(Number.isInteger(objective.spec.criticality)).toBe(true);
  }

  const route = find("HTTPRoute");
  expect(route.spec.rules[0].backendRefs[0]).toEqual({
    group: "inference.networking.k8s.io",
    kind: "InferencePool",
    name: pool.metadata.name,
  });
});
