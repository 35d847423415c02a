/**
 * What the README shows, run against real servers.
 *
 * - The `buf curl` commands of the "Debugging with `buf curl` and grpcurl"
 *   section, as written: only the ports (50051 for the runtime, 50052 for
 *   the ToolExecutor) and the `SESSION_ID` placeholder (taken from what
 *   GetOrCreateSession printed, as a reader would) are filled in. `buf` is
 *   the one in node_modules. The grpcurl lines are not run: grpcurl is not
 *   installed here.
 * - The TypeScript example of the "TypeScript client" section, which is
 *   examples/quickstart.ts verbatim (compiled with the package).
 */

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { readFile } from "node:fs/promises";
import { delimiter, join } from "node:path";
import { promisify } from "node:util";
import { after, before, test } from "node:test";
import { PACKAGE, REPO, type Servers, startServers } from "./support/servers.js";

const run = promisify(execFile);
const HEADING = "### Debugging with `buf curl` and grpcurl";
const TS_HEADING = "### TypeScript client";

/** The first fenced block in `language` after `heading`. */
function codeBlock(readme: string, heading: string, language: string): string {
  const start = readme.indexOf(heading);
  assert.ok(start >= 0, `the README has no "${heading}" section`);
  const match = new RegExp("```" + language + "\\n([\\s\\S]*?)```").exec(readme.slice(start));
  assert.ok(match, `no ${language} block under "${heading}"`);
  return match[1]!;
}

/** The `buf curl` commands of the section's code blocks, continuation lines joined. */
function bufCurlCommands(readme: string): string[] {
  const start = readme.indexOf(HEADING);
  assert.ok(start >= 0, `the README has no "${HEADING}" section`);
  const rest = readme.slice(start + HEADING.length);
  const end = rest.search(/^#{1,3} /m); // the next heading
  const section = end < 0 ? rest : rest.slice(0, end);
  const blocks = [...section.matchAll(/```sh\n([\s\S]*?)```/g)].map((m) => m[1]!);
  const lines = blocks
    .join("\n")
    .replace(/\\\n\s*/g, "")
    .split("\n");
  return lines.map((line) => line.trim()).filter((line) => line.startsWith("buf curl "));
}

/** Concatenated pretty-printed JSON documents, as buf curl prints a stream. */
function jsonDocuments(text: string): unknown[] {
  const documents: unknown[] = [];
  let depth = 0;
  let begin = -1;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (inString) {
      if (c === "\\") i++;
      else if (c === '"') inString = false;
    } else if (c === '"') {
      inString = true;
    } else if (c === "{") {
      if (depth++ === 0) begin = i;
    } else if (c === "}" && --depth === 0) {
      documents.push(JSON.parse(text.slice(begin, i + 1)));
    }
  }
  return documents;
}

let servers: Servers;

before(async () => {
  servers = await startServers();
});

after(async () => {
  await servers?.stop();
});

test("the README's buf curl commands work as written", async () => {
  const commands = bufCurlCommands(await readFile(join(REPO, "README.md"), "utf8"));
  assert.ok(commands.length >= 2 && commands.length <= 6, `${commands.length} commands`);
  const env = {
    ...process.env,
    PATH: `${join(PACKAGE, "node_modules", ".bin")}${delimiter}${process.env.PATH ?? ""}`,
  };
  let sessionId: string | undefined;
  const checked: string[] = [];
  for (const written of commands) {
    let command = written
      .replaceAll("127.0.0.1:50051", `127.0.0.1:${servers.port}`)
      .replaceAll("127.0.0.1:50052", `127.0.0.1:${servers.toolsPort}`);
    if (command.includes("SESSION_ID")) {
      assert.ok(sessionId, "SESSION_ID is used before GetOrCreateSession printed one");
      command = command.replaceAll("SESSION_ID", sessionId);
    }
    const { stdout } = await run("bash", ["-c", command], { env, timeout: 60_000 }).catch(
      (error: { stdout?: string; stderr?: string }) => {
        assert.fail(
          `${written}\nfailed: ${error.stderr ?? ""}${error.stdout ?? ""}\n${servers.logs()}`,
        );
      },
    );
    const documents = jsonDocuments(stdout) as Record<string, any>[];
    if (command.includes("--list-methods")) {
      assert.match(stdout, /pilothouse\.v1\.RunService[./]StreamTo/);
      assert.match(stdout, /pilothouse\.v1\.SessionService[./]GetOrCreateSession/);
      checked.push("list-methods");
    } else if (command.includes("/ListAgents")) {
      assert.ok(documents[0]!.agents.some((a: any) => a.config.name === "assistant"));
      checked.push("ListAgents");
    } else if (command.includes("/GetOrCreateSession")) {
      sessionId = documents[0]!.session.id;
      assert.ok(sessionId);
      checked.push("GetOrCreateSession");
    } else if (command.includes("/StreamTo")) {
      const events = documents.map((d) => d.event);
      assert.ok(events[0].runStarted);
      assert.equal(events.at(-1).done.stopReason, "STOP_REASON_TEXT_RESPONSE");
      assert.deepEqual(
        events.map((e) => e.sequence),
        events.map((_, i) => String(i + 1)),
      );
      checked.push("StreamTo");
    } else if (command.includes("/ListTools")) {
      assert.ok(documents[0]!.tools.some((t: any) => t.name === "calculate"));
      checked.push("ListTools");
    }
  }
  assert.ok(checked.includes("ListAgents"), `checked: ${checked}`);
});

test("the README's TypeScript example is examples/quickstart.ts, and it runs", async () => {
  const readme = await readFile(join(REPO, "README.md"), "utf8");
  const example = await readFile(join(PACKAGE, "examples", "quickstart.ts"), "utf8");
  assert.equal(
    codeBlock(readme, TS_HEADING, "ts"),
    example,
    "update the README from examples/quickstart.ts",
  );
  const { stdout } = await run(
    process.execPath,
    [join(PACKAGE, "dist", "examples", "quickstart.js")],
    {
      env: { ...process.env, PILOTHOUSE_ADDRESS: servers.address },
      timeout: 60_000,
    },
  );
  assert.match(stdout, /calls: current_time, calculate, json_query, text_stats/);
  assert.match(stdout, /\[TEXT_RESPONSE\]/);
  // Two answers: the streamed run's and the steered run's.
  assert.equal(stdout.match(/scripted test model/g)?.length, 2, stdout);
});
