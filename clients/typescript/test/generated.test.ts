/**
 * The committed stubs in src/gen are what `buf generate` makes from the
 * protos now (run `make gen-ts` after changing a proto), and the package
 * exports all of them.
 */

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtemp, readdir, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { test } from "node:test";
import { PACKAGE } from "./support/servers.js";

async function filesUnder(root: string): Promise<string[]> {
  const entries = await readdir(root, { recursive: true, withFileTypes: true });
  return entries
    .filter((entry) => entry.isFile())
    .map((entry) => relative(root, join(entry.parentPath ?? entry.path, entry.name)))
    .sort();
}

test("the committed TypeScript stubs match the protos", async () => {
  const out = await mkdtemp(join(tmpdir(), "pilothouse-ts-gen-"));
  try {
    execFileSync(join(PACKAGE, "node_modules", ".bin", "buf"), ["generate", "-o", out], {
      cwd: PACKAGE,
      stdio: ["ignore", "inherit", "inherit"],
    });
    const fresh = join(out, "src", "gen");
    const committed = join(PACKAGE, "src", "gen");
    const names = await filesUnder(fresh);
    assert.ok(names.includes(join("pilothouse", "v1", "run_service_pb.ts")));
    assert.deepEqual(await filesUnder(committed), names, "stub files differ: run `make gen-ts`");
    const stale: string[] = [];
    for (const name of names) {
      const [a, b] = await Promise.all([
        readFile(join(fresh, name)),
        readFile(join(committed, name)),
      ]);
      if (!a.equals(b)) {
        stale.push(name);
      }
    }
    assert.deepEqual(stale, [], "stale stubs: run `make gen-ts`");
  } finally {
    await rm(out, { recursive: true, force: true });
  }
});

test("src/index.ts re-exports every pilothouse.v1 module", async () => {
  const index = await readFile(join(PACKAGE, "src", "index.ts"), "utf8");
  const modules = (await readdir(join(PACKAGE, "src", "gen", "pilothouse", "v1")))
    .filter((name) => name.endsWith("_pb.ts"))
    .map((name) => `./gen/pilothouse/v1/${name.replace(/\.ts$/, ".js")}`);
  const missing = modules.filter((module) => !index.includes(`export * from "${module}";`));
  assert.deepEqual(missing, [], "add an export line to src/index.ts for each new proto file");
});
