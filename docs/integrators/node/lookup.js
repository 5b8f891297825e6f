// A hashex client in Node.js: the contract loaded from proto/ with @grpc/proto-loader, called
// over mutual TLS with @grpc/grpc-js. It asks the node for its statistics, then looks up an MD5,
// and prints one JSON line per answer. A refused call prints its status code, message and the
// google.rpc.BadRequest field violations carried in `grpc-status-details-bin`.
//
//   node lookup.js --target HOST:PORT --ca node-ca.pem --cert unit.pem --key unit.key \
//       --proto-dir ../../../proto --md5 HEX
//
// The proto directory holds the contract (hashex/v1) and, in third_party/, the google/rpc
// status.proto and error_details.proto of the error details (`make venv` puts them there).
// Exit codes: 0 every call answered, 1 a call was refused (printed), 2 bad arguments.
"use strict";

const fs = require("node:fs");
const path = require("node:path");
const { parseArgs } = require("node:util");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");
const protobuf = require("protobufjs");

function options() {
  const { values } = parseArgs({
    options: {
      target: { type: "string" },
      ca: { type: "string" },
      cert: { type: "string" },
      key: { type: "string" },
      "proto-dir": { type: "string" },
      md5: { type: "string" },
    },
  });
  const missing = Object.keys({
    target: 0, ca: 0, cert: 0, key: 0, "proto-dir": 0, md5: 0,
  }).filter((name) => !values[name]);
  if (missing.length) {
    process.stderr.write(`missing: ${missing.map((m) => "--" + m).join(" ")}\n`);
    process.exit(2);
  }
  return values;
}

function registryClient(args) {
  const definition = protoLoader.loadSync("hashex/v1/registry.proto", {
    includeDirs: [args["proto-dir"]],
    keepCase: true,
    longs: String,
    enums: String,
    defaults: true,
  });
  const { hashex } = grpc.loadPackageDefinition(definition);
  const credentials = grpc.credentials.createSsl(
    fs.readFileSync(args.ca),
    fs.readFileSync(args.key),
    fs.readFileSync(args.cert),
  );
  return new hashex.v1.Registry(args.target, credentials);
}

// google.rpc.Status and its BadRequest detail, decoded from the trailer grpc-js hands over.
function errorDetails(error, protoDir) {
  const raw = error.metadata && error.metadata.get("grpc-status-details-bin")[0];
  if (!raw) return [];
  const root = new protobuf.Root();
  root.resolvePath = (_origin, target) =>
    target.startsWith("google/protobuf/") ? target : path.join(protoDir, "third_party", target);
  root.loadSync(["google/rpc/status.proto", "google/rpc/error_details.proto"], { keepCase: true });
  const status = root.lookupType("google.rpc.Status").decode(raw);
  const badRequest = root.lookupType("google.rpc.BadRequest");
  return status.details
    .filter((any) => any.type_url.endsWith("/google.rpc.BadRequest"))
    .flatMap((any) => badRequest.decode(any.value).field_violations)
    .map((v) => ({ field: v.field, description: v.description }));
}

function call(client, method, request) {
  const deadline = new Date(Date.now() + 10_000);
  return new Promise((resolve, reject) => {
    client[method](request, { deadline }, (error, response) =>
      error ? reject(error) : resolve(response),
    );
  });
}

async function main() {
  const args = options();
  const client = registryClient(args);
  try {
    const stats = await call(client, "GetStats", {});
    console.log(JSON.stringify({ call: "GetStats", node_id: stats.node_id, media_count: stats.media_count }));
    const lookup = await call(client, "Lookup", {
      signals: [{ algorithm: "HASH_ALGORITHM_MD5", value: args.md5 }],
    });
    console.log(JSON.stringify({ call: "Lookup", results: lookup.results.length }));
    return 0;
  } catch (error) {
    console.log(JSON.stringify({
      refused: grpc.status[error.code],
      message: error.details,
      violations: errorDetails(error, args["proto-dir"]),
    }));
    return 1;
  } finally {
    client.close();
  }
}

main().then((code) => process.exit(code));
