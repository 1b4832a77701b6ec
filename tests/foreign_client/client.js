// A foreign client for a fedaudit node: Node.js, @grpc/grpc-js and @grpc/proto-loader,
// loading the published .proto file. It shares no code with fedaudit, so it shows that
// what the node puts on the wire is standard gRPC that any language can use.
//
//   node client.js HOST:PORT PROTO_ROOT
//
// Prints one JSON object: the capabilities answer, and a Query refused for an
// unknown template with its google.rpc.ErrorInfo decoded from grpc-status-details-bin.
"use strict";

const path = require("node:path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");
const protobuf = require("protobufjs");

const [address, protoRoot] = process.argv.slice(2);
if (!address || !protoRoot) {
  console.error("usage: node client.js HOST:PORT PROTO_ROOT");
  process.exit(2);
}

// google.rpc.Status and ErrorInfo as published in googleapis (google/rpc/status.proto,
// google/rpc/error_details.proto); only the fields a client needs to read a refusal.
const rpcRoot = protobuf.parse(`
  syntax = "proto3";
  package google.rpc;
  message Any { string type_url = 1; bytes value = 2; }
  message Status { int32 code = 1; string message = 2; repeated Any details = 3; }
  message ErrorInfo { string reason = 1; string domain = 2; map<string, string> metadata = 3; }
`, { keepCase: true }).root;
const Status = rpcRoot.lookupType("google.rpc.Status");
const ErrorInfo = rpcRoot.lookupType("google.rpc.ErrorInfo");

const definition = protoLoader.loadSync(path.join(protoRoot, "fedaudit/wire/v1/node.proto"), {
  includeDirs: [protoRoot],
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
});
const wire = grpc.loadPackageDefinition(definition).fedaudit.wire.v1;
const client = new wire.AuditNode(address, grpc.credentials.createInsecure());

function metadata() {
  const md = new grpc.Metadata();
  md.set("fedaudit-protocol", "1");
  md.set("fedaudit-requester", "oversight-board");
  return md;
}

function deadline() {
  return { deadline: new Date(Date.now() + 10000) };
}

function call(method, request) {
  return new Promise((resolve) => {
    client[method](request, metadata(), deadline(), (error, response) =>
      resolve({ error, response }),
    );
  });
}

function decodeRefusal(error) {
  const raw = error.metadata.get("grpc-status-details-bin")[0];
  const status = Status.decode(raw);
  const infos = status.details
    .filter((d) => d.type_url === "type.googleapis.com/google.rpc.ErrorInfo")
    .map((d) => ErrorInfo.toObject(ErrorInfo.decode(d.value)));
  return {
    code: grpc.status[error.code],
    status_code: status.code,
    message: status.message,
    error_info: infos,
    request_id: error.metadata.get("fedaudit-request-id")[0] || null,
  };
}

async function main() {
  const caps = await call("GetCapabilities", {});
  if (caps.error) throw caps.error;
  const refused = await call("Query", {
    request_id: "foreign-1",
    template: "no_such_template",
    mechanism: "DISCRETE_GAUSSIAN",
    rho: 0.05,
    confidence: 0.95,
  });
  if (!refused.error) throw new Error("the query for an unknown template was answered");
  const out = {
    capabilities: {
      protocol_version: caps.response.protocol_version,
      municipality_code: caps.response.municipality_code,
      templates: caps.response.templates.map((t) => t.name),
      requester_rho_remaining: caps.response.budget.requester_rho_remaining,
    },
    refusal: decodeRefusal(refused.error),
  };
  process.stdout.write(JSON.stringify(out) + "\n");
  client.close();
}

main().catch((error) => {
  console.error(String(error && error.stack ? error.stack : error));
  process.exit(1);
});
