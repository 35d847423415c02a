/**
 * The Pilothouse TypeScript client.
 *
 * - `PilothouseClient`: helpers over AgentService, SessionService and
 *   RunService (gRPC over HTTP/2 through Connect).
 * - `RunStream`: a run's events with automatic re-attach after a cut.
 * - `SteerStream`: the bidirectional Steer call.
 * - `PilothouseError`: failed calls with ErrorInfo, BadRequest and
 *   RetryInfo decoded.
 * - `approve`, `deny`, `approveAlways`, `answer`: decisions.
 *
 * The generated messages, enums and service descriptors of `pilothouse.v1`
 * are re-exported; the `google.rpc` ones are under `./gen/google/rpc/*`.
 */

export * from "./client.js";
export * from "./decisions.js";
export * from "./errors.js";
export * from "./run-stream.js";
export * from "./steer.js";
export * from "./gen/pilothouse/v1/agent_pb.js";
export * from "./gen/pilothouse/v1/agent_service_pb.js";
export * from "./gen/pilothouse/v1/event_pb.js";
export * from "./gen/pilothouse/v1/message_pb.js";
export * from "./gen/pilothouse/v1/run_service_pb.js";
export * from "./gen/pilothouse/v1/session_pb.js";
export * from "./gen/pilothouse/v1/session_service_pb.js";
export * from "./gen/pilothouse/v1/tool_pb.js";
export * from "./gen/pilothouse/v1/tool_executor_service_pb.js";
