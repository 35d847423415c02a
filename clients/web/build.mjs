// Bundle the console into server/pilothouse/web/console/, which the
// Python package ships and the web port serves. The generated stubs and
// the browser-safe helpers come from ../typescript/src; every npm package
// resolves from this directory's node_modules, so the bundle holds one
// copy of each (esbuild would otherwise pick up ../typescript's own).
import { copyFile, mkdir } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import * as esbuild from "esbuild";

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, "..", "..", "server", "pilothouse", "web", "console");

const oneCopy = {
  name: "one-copy",
  setup(build) {
    build.onResolve({ filter: /^@(bufbuild|connectrpc)\// }, (args) => {
      if (args.pluginData?.resolved) {
        return undefined;
      }
      return build.resolve(args.path, {
        kind: args.kind,
        resolveDir: here,
        pluginData: { resolved: true },
      });
    });
  },
};

await mkdir(out, { recursive: true });
await esbuild.build({
  entryPoints: [join(here, "src", "main.ts")],
  outfile: join(out, "console.js"),
  bundle: true,
  format: "esm",
  platform: "browser",
  target: ["es2022"],
  minify: true,
  legalComments: "none",
  plugins: [oneCopy],
  logLevel: "warning",
});
for (const file of ["index.html", "console.css"]) {
  await copyFile(join(here, "src", file), join(out, file));
}
