// The Node.js a benchmark's child processes run, and the checkout they run: this Node.js and this checkout, or
// with --image-node the Node.js the image ships and a copy of dist/ built for it (scripts/image-node.sh).
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const REPO = fileURLToPath(new URL('..', import.meta.url));

/** `{ node, root, version }`: the binary, the directory holding dist/ and node_modules/, and `node --version`. */
export function childNode(argv = process.argv) {
  const dir = argv.includes('--image-node')
    ? execFileSync(join(REPO, 'scripts/image-node.sh'), {
        encoding: 'utf8',
        stdio: ['ignore', 'pipe', 'inherit'],
      }).trim()
    : undefined;
  const node = dir ? join(dir, 'bin/node') : process.execPath;
  const root = dir ? join(dir, 'app') : REPO.replace(/\/$/, '');
  const version = execFileSync(node, ['--version'], { encoding: 'utf8' }).trim();
  return { node, root, version };
}
