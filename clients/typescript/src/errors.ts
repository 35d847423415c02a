/**
 * Failed calls as one error type, with the server's rich status decoded.
 *
 * Pilothouse answers errors with a gRPC status whose `grpc-status-details-bin`
 * trailer carries a `google.rpc.Status`: a `google.rpc.ErrorInfo` (reason,
 * domain `pilothouse.v1`, metadata naming the objects) and, for bad input,
 * a `google.rpc.BadRequest`. Connect parses the trailer; this module decodes
 * the details with the stubs generated from the google/rpc protos.
 */

import { durationMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { Code as RpcCode } from "./gen/google/rpc/code_pb.js";
import {
  BadRequestSchema,
  ErrorInfoSchema,
  RetryInfoSchema,
} from "./gen/google/rpc/error_details_pb.js";

export { Code };

/** One `google.rpc.BadRequest.FieldViolation`: which request field is wrong and why. */
export interface FieldViolation {
  /** Path of the field, e.g. `content` or `config.name`. */
  readonly field: string;
  /** What is wrong with it, for humans. */
  readonly description: string;
  /** Machine-readable reason, when the server sets one ("" otherwise). */
  readonly reason: string;
}

/**
 * The gRPC name of a status code (`"NOT_FOUND"`, `"UNAVAILABLE"`, ...), as
 * `google.rpc.Code` spells it and as the Pilothouse docs use it. Connect's
 * `Code` enum has the same numbers.
 */
export function codeName(code: Code): string {
  return RpcCode[code as number] ?? `CODE_${code}`;
}

/**
 * A failed Pilothouse call.
 *
 * - `code`: the gRPC status code (Connect's `Code`, numerically the gRPC
 *   one); `codeName` is its gRPC name.
 * - `rawMessage`: the server's status message; `message` is
 *   `"<CODE_NAME>: <rawMessage>"`.
 * - `reason`, `domain`, `metadata`: from `google.rpc.ErrorInfo`
 *   (`""`, `""`, `{}` when the status has none), e.g. reason
 *   `SESSION_NOT_FOUND` with metadata `{ session_id: "..." }`.
 * - `fieldViolations`: from `google.rpc.BadRequest` (empty when none).
 * - `retryDelayMs`: from `google.rpc.RetryInfo`, milliseconds to wait before
 *   retrying (`undefined` when the server gave none).
 * - `cause`: the underlying `ConnectError`.
 */
export class PilothouseError extends Error {
  override readonly name = "PilothouseError";
  readonly code: Code;
  readonly codeName: string;
  readonly rawMessage: string;
  readonly reason: string;
  readonly domain: string;
  readonly metadata: Readonly<Record<string, string>>;
  readonly fieldViolations: readonly FieldViolation[];
  readonly retryDelayMs: number | undefined;
  override readonly cause: ConnectError;

  constructor(error: ConnectError) {
    const name = codeName(error.code);
    super(`${name}: ${error.rawMessage}`, { cause: error });
    this.cause = error;
    this.code = error.code;
    this.codeName = name;
    this.rawMessage = error.rawMessage;
    const info = error.findDetails(ErrorInfoSchema)[0];
    this.reason = info?.reason ?? "";
    this.domain = info?.domain ?? "";
    this.metadata = { ...(info?.metadata ?? {}) };
    this.fieldViolations = error.findDetails(BadRequestSchema).flatMap((bad) =>
      bad.fieldViolations.map((v) => ({
        field: v.field,
        description: v.description,
        reason: v.reason,
      })),
    );
    const retry = error.findDetails(RetryInfoSchema)[0];
    this.retryDelayMs = retry?.retryDelay ? durationMs(retry.retryDelay) : undefined;
  }

  /**
   * `error` as a PilothouseError: returned as is when it is one, decoded
   * when it is a `ConnectError`, wrapped (code `UNKNOWN`, or `CANCELED` for
   * an abort) otherwise.
   */
  static from(error: unknown): PilothouseError {
    if (error instanceof PilothouseError) {
      return error;
    }
    return new PilothouseError(ConnectError.from(error));
  }
}

/** Run `call` and turn whatever it throws into a PilothouseError. */
export async function translated<T>(call: () => Promise<T>): Promise<T> {
  try {
    return await call();
  } catch (error) {
    throw PilothouseError.from(error);
  }
}
