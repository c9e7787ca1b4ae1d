// Builds the page into web/dist/: the bundled app (esbuild), the static
// files, and the WebAssembly runtimes of onnxruntime-web and MediaPipe, so
// that the page loads nothing from any other server.
//
//   cd web && npm ci && npm run build
//
// dist/build.json records a hash of every input, which deocc_jax.web checks
// to refuse a stale build.

import { createHash } from "node:crypto";
import { copyFileSync, mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import * as esbuild from "esbuild";

const root = dirname(fileURLToPath(import.meta.url));
const dist = join(root, "dist");
const nm = join(root, "node_modules");

// Runtime files the page fetches itself (not bundled), by destination folder.
const VENDOR = {
  "vendor/ort": [["onnxruntime-web/dist", /^ort-wasm-simd-threaded\.jsep\.(wasm|mjs)$/]],
  "vendor/mediapipe": [["@mediapipe/tasks-vision/wasm", /^vision_wasm(_nosimd)?_internal\.(js|wasm)$/]],
};

/** sha256 over the sources, build script and lockfile: what deocc_jax.web compares. */
export function sourceHash() {
  const h = createHash("sha256");
  const files = ["build.mjs", "package.json", "package-lock.json",
    ...readdirSync(join(root, "src")).sort().map((f) => join("src", f))];
  for (const f of files) {
    h.update(f + "\0");
    h.update(readFileSync(join(root, f)));
    h.update("\0");
  }
  return h.digest("hex");
}

rmSync(dist, { recursive: true, force: true });
mkdirSync(dist, { recursive: true });
await esbuild.build({
  entryPoints: [join(root, "src", "main.js")],
  bundle: true,
  format: "esm",
  minify: true,
  sourcemap: true,
  target: ["chrome113", "firefox120", "safari17"],
  outfile: join(dist, "app.js"),
  logLevel: "warning",
});
for (const f of ["index.html", "style.css"]) copyFileSync(join(root, "src", f), join(dist, f));
const copied = [];
for (const [dest, sources] of Object.entries(VENDOR)) {
  mkdirSync(join(dist, dest), { recursive: true });
  for (const [dir, pattern] of sources) {
    const names = readdirSync(join(nm, dir)).filter((n) => pattern.test(n));
    if (!names.length) throw new Error(`no files matching ${pattern} in node_modules/${dir}`);
    for (const n of names) {
      copyFileSync(join(nm, dir, n), join(dist, dest, n));
      copied.push(`${dest}/${n}`);
    }
  }
}
const versions = Object.fromEntries(["onnxruntime-web", "@mediapipe/tasks-vision", "esbuild"].map(
  (p) => [p, JSON.parse(readFileSync(join(nm, p, "package.json"))).version]));
writeFileSync(join(dist, "build.json"),
  JSON.stringify({ source_sha256: sourceHash(), versions, vendor: copied }, null, 2) + "\n");
console.log(`built ${dist} (${copied.length} runtime files; ${JSON.stringify(versions)})`);
