// Bundle the console into server/pilothouse/web/console/, which the
// Python package ships and the web port serves (`make web`). With --check
// nothing is written: it fails when the committed files differ from a
// fresh build (`make lint`), as the generated stubs are checked.
//
// The generated stubs and the browser-safe helpers come from
// ../typescript/src; every npm package resolves from this directory's
// node_modules, so the bundle holds one copy of each (esbuild would
// otherwise pick up ../typescript's own).
import { readFile, mkdir, writeFile } from "node:fs/promises";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import * as esbuild from "esbuild";

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, "..", "..", "server", "pilothouse", "web", "console");
const check = process.argv.includes("--check");

// Node's own resolution from this file: the ESM build of each package, as
// its "import" export condition names it.
const oneCopy = {
  name: "one-copy",
  setup(build) {
    build.onResolve({ filter: /^@(bufbuild|connectrpc)\// }, (args) => ({
      path: fileURLToPath(import.meta.resolve(args.path)),
    }));
  },
};

const bundle = await esbuild.build({
  entryPoints: [join(here, "src", "main.ts")],
  outfile: join(out, "console.js"),
  bundle: true,
  format: "esm",
  platform: "browser",
  target: ["es2022"],
  // Whitespace and syntax only: esbuild's identifier renaming gave a
  // different bundle in about one build of thirty here (same inputs, names
  // shifted), which made the --check above fail at random; without it
  // seventy builds in a row were identical (201 KB instead of 151 KB).
  minifyWhitespace: true,
  minifySyntax: true,
  legalComments: "none",
  plugins: [oneCopy],
  logLevel: "warning",
  write: false,
});
const files = new Map(bundle.outputFiles.map((f) => [f.path, f.contents]));
for (const name of ["index.html", "console.css"]) {
  files.set(join(out, name), await readFile(join(here, "src", name)));
}

if (check) {
  const stale = [];
  for (const [path, contents] of files) {
    const committed = await readFile(path).catch(() => undefined);
    if (committed === undefined || !Buffer.from(contents).equals(committed)) {
      stale.push(relative(process.cwd(), path));
    }
  }
  if (stale.length > 0) {
    console.error(`the web console's built files are stale: ${stale.join(", ")}; run make web`);
    process.exit(1);
  }
} else {
  await mkdir(out, { recursive: true });
  for (const [path, contents] of files) {
    await writeFile(path, contents);
  }
}
