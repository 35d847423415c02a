/**
 * Decoding a rich status from the gRPC trailers, through Connect's own
 * trailer parser: what the runtime sends in `grpc-status-details-bin`
 * becomes PilothouseError fields. (The tests against the real runtime in
 * client.test.ts cover ErrorInfo and BadRequest end to end; the runtime
 * sends no RetryInfo today, so that field is checked here.)
 */

import assert from "node:assert/strict";
import { test } from "node:test";
import { create, toBinary } from "@bufbuild/protobuf";
import { anyPack, durationFromMs } from "@bufbuild/protobuf/wkt";
import { findTrailerError } from "@connectrpc/connect/protocol-grpc";
import {
  BadRequestSchema,
  ErrorInfoSchema,
  RetryInfoSchema,
} from "../src/gen/google/rpc/error_details_pb.js";
import { StatusSchema } from "../src/gen/google/rpc/status_pb.js";
import { Code, codeName, PilothouseError } from "../src/index.js";

function trailers(status: ReturnType<typeof create<typeof StatusSchema>>): Headers {
  const bin = Buffer.from(toBinary(StatusSchema, status)).toString("base64").replace(/=+$/, "");
  return new Headers({
    "grpc-status": String(status.code),
    "grpc-message": encodeURIComponent(status.message),
    "grpc-status-details-bin": bin,
  });
}

test("ErrorInfo, BadRequest and RetryInfo are decoded from the status trailer", () => {
  const status = create(StatusSchema, {
    code: Code.Unavailable,
    message: "draining",
    details: [
      anyPack(
        ErrorInfoSchema,
        create(ErrorInfoSchema, {
          reason: "DRAINING",
          domain: "pilothouse.v1",
          metadata: { replica: "a" },
        }),
      ),
      anyPack(
        BadRequestSchema,
        create(BadRequestSchema, {
          fieldViolations: [{ field: "content", description: "must not be empty" }],
        }),
      ),
      anyPack(RetryInfoSchema, create(RetryInfoSchema, { retryDelay: durationFromMs(1500) })),
    ],
  });
  const connectError = findTrailerError(trailers(status));
  assert.ok(connectError);
  const error = PilothouseError.from(connectError);
  assert.equal(error.code, Code.Unavailable);
  assert.equal(error.codeName, "UNAVAILABLE");
  assert.equal(error.rawMessage, "draining");
  assert.equal(error.message, "UNAVAILABLE: draining");
  assert.equal(error.reason, "DRAINING");
  assert.equal(error.domain, "pilothouse.v1");
  assert.deepEqual(error.metadata, { replica: "a" });
  assert.deepEqual(error.fieldViolations, [
    { field: "content", description: "must not be empty", reason: "" },
  ]);
  assert.equal(error.retryDelayMs, 1500);
  assert.equal(error.cause, connectError);
  assert.equal(PilothouseError.from(error), error);
});

test("a status without details gives empty fields", () => {
  const error = PilothouseError.from(
    findTrailerError(
      trailers(
        create(StatusSchema, {
          code: Code.Internal,
          message: "boom",
        }),
      ),
    ),
  );
  assert.equal(error.reason, "");
  assert.deepEqual(error.metadata, {});
  assert.deepEqual(error.fieldViolations, []);
  assert.equal(error.retryDelayMs, undefined);
});

test("anything else becomes a PilothouseError too", () => {
  assert.equal(PilothouseError.from(new Error("x")).code, Code.Unknown);
  const abort = new AbortController();
  abort.abort();
  assert.equal(PilothouseError.from(abort.signal.reason).code, Code.Canceled);
  assert.equal(codeName(Code.NotFound), "NOT_FOUND");
  assert.equal(codeName(Code.Canceled), "CANCELLED");
});
