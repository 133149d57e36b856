// `make web`: bundle the two pages with esbuild into dist/ (served as /static/<file>).
import { build } from "esbuild";

const result = await build({
  entryPoints: { overlay: "src/overlay.js", host: "src/host.js" },
  outdir: "dist",
  bundle: true,
  minify: true,
  sourcemap: "linked",
  format: "iife",
  target: ["es2020", "chrome87", "safari15", "firefox90"],
  legalComments: "eof",
  metafile: true,
  logLevel: "warning",
});
for (const [file, { bytes }] of Object.entries(result.metafile.outputs)) {
  if (file.endsWith(".js")) console.log(`  ${file}  ${(bytes / 1024).toFixed(1)} KiB`);
}
