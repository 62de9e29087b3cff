// Bundles the guest agent (guest/agent/main.ts and its dependencies, @grpc/grpc-js included) into
// one JS file, build/guest/agent.js, which the guest asset build puts on the agent disk. One file
// loads much faster under TCG than node_modules resolution (DESIGN.md).
const esbuild = require('esbuild');
const fs = require('node:fs');
const path = require('node:path');

const root = path.resolve(__dirname, '..');
const entry = path.join(root, 'guest/agent/main.ts');
if (!fs.existsSync(entry)) {
  console.error('bundle-agent: no guest/agent/main.ts yet, skipping');
  process.exit(0);
}
esbuild.buildSync({
  entryPoints: [entry],
  bundle: true,
  platform: 'node',
  target: 'node20',
  format: 'cjs',
  outfile: path.join(root, 'build/guest/agent.js'),
  minify: false,
  sourcemap: false,
  logLevel: 'warning',
});
fs.copyFileSync(path.join(root, 'guest/protocol/agent.proto'), path.join(root, 'build/guest/agent.proto'));
