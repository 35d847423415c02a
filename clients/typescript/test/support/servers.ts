/**
 * The real servers for the tests: `pilothouse-tools` and `pilothouse-server`
 * from the repository's .venv, each on a port the OS picks (listen address
 * port 0), with the built-in scripted test model, a memory store and no
 * metrics endpoints (their default ports are fixed).
 */

import { type ChildProcess, spawn } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

/** The repository root (tests run from dist/test/support). */
export const REPO = resolve(fileURLToPath(import.meta.url), "../../../../../..");
/** The TypeScript package (clients/typescript). */
export const PACKAGE = join(REPO, "clients", "typescript");
const VENV = process.env.PILOTHOUSE_VENV ?? join(REPO, ".venv");

/** Both servers, running. */
export interface Servers {
  /** The runtime's port on 127.0.0.1. */
  readonly port: number;
  /** `http://127.0.0.1:<port>`, for `PilothouseClient`. */
  readonly address: string;
  /** The ToolExecutor's port on 127.0.0.1. */
  readonly toolsPort: number;
  /** What both processes printed so far (for failure messages). */
  logs(): string;
  /** SIGTERM both and wait for them to exit. */
  stop(): Promise<void>;
}

const START_TIMEOUT_MS = 30_000;
const running = new Set<ChildProcess>();
// No server outlives the test process: not on a normal exit, and not when
// the test runner stops this file with a signal (a test timeout).
const killAll = () => {
  for (const child of running) {
    child.kill("SIGKILL");
  }
};
process.on("exit", killAll);
for (const signal of ["SIGTERM", "SIGINT", "SIGHUP"] as const) {
  process.once(signal, () => {
    killAll();
    process.exit(1);
  });
}

/** Start the ToolExecutor, then the runtime pointed at it. */
export async function startServers(extraEnv: Record<string, string> = {}): Promise<Servers> {
  const dataDir = await mkdtemp(join(tmpdir(), "pilothouse-ts-"));
  const env: Record<string, string> = {};
  for (const [key, value] of Object.entries(process.env)) {
    // Nothing from the caller's Pilothouse or OpenAI settings: the scripted model, always.
    if (value !== undefined && !key.startsWith("PILOTHOUSE_") && !key.startsWith("OPENAI_")) {
      env[key] = value;
    }
  }
  Object.assign(env, {
    PILOTHOUSE_TOOLS_LISTEN_ADDRESS: "127.0.0.1:0",
    PILOTHOUSE_TOOLS_METRICS_PORT: "0",
    PILOTHOUSE_METRICS_PORT: "0",
    PILOTHOUSE_STORE_URL: "memory://",
    PILOTHOUSE_DATA_DIR: dataDir,
    PILOTHOUSE_GENERATE_TITLES: "false",
    PILOTHOUSE_SHUTDOWN_GRACE: "2",
    PILOTHOUSE_TOOLS_SHUTDOWN_GRACE: "2",
    ...extraEnv,
  });
  let output = "";
  const children: ChildProcess[] = [];
  const launch = (name: string, childEnv: Record<string, string>, ready: RegExp) => {
    const child = spawn(join(VENV, "bin", name), [], {
      env: childEnv,
      cwd: dataDir,
      stdio: ["ignore", "pipe", "pipe"],
    });
    running.add(child);
    children.push(child);
    child.once("exit", () => running.delete(child));
    return new Promise<number>((resolvePort, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`${name} did not start within ${START_TIMEOUT_MS} ms:\n${output}`)),
        START_TIMEOUT_MS,
      );
      const read = (chunk: Buffer) => {
        output += `[${name}] ${chunk.toString()}`;
        const match = ready.exec(output);
        if (match) {
          clearTimeout(timer);
          resolvePort(Number(match[1]));
        }
      };
      child.stdout!.on("data", read);
      child.stderr!.on("data", read);
      child.once("error", (error) => {
        clearTimeout(timer);
        reject(error);
      });
      child.once("exit", (code) => {
        clearTimeout(timer);
        reject(new Error(`${name} exited with ${code} before serving:\n${output}`));
      });
    });
  };
  const stop = async () => {
    await Promise.all(children.map(terminate));
    await rm(dataDir, { recursive: true, force: true });
  };
  try {
    // pilothouse-tools prints this line on stdout once it serves.
    const toolsPort = await launch(
      "pilothouse-tools",
      env,
      /pilothouse-tools listening on [\d.]+:(\d+)/,
    );
    // The runtime logs the port it bound once every service is up.
    const port = await launch(
      "pilothouse-server",
      {
        ...env,
        PILOTHOUSE_LISTEN_ADDRESS: "127.0.0.1:0",
        PILOTHOUSE_TOOL_EXECUTORS: `127.0.0.1:${toolsPort}`,
      },
      /pilothouse-server listening on port (\d+)/,
    );
    return { port, toolsPort, address: `http://127.0.0.1:${port}`, logs: () => output, stop };
  } catch (error) {
    await stop();
    throw error;
  }
}

/** SIGTERM, then SIGKILL after 15 s; resolves once the process has exited. */
function terminate(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) {
    return Promise.resolve();
  }
  return new Promise((done) => {
    const timer = setTimeout(() => child.kill("SIGKILL"), 15_000);
    child.once("exit", () => {
      clearTimeout(timer);
      done();
    });
    child.kill("SIGTERM");
  });
}
