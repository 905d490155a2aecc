// Builds the JupyterLab extension into ../neural_jupyter/labextension with npm packages only
// (no Python, no installed JupyterLab): JupyterLab's core metadata (which packages the
// page shares) comes from the pinned @jupyterlab/core-meta. Then stamps the output with a
// hash of the sources, which tests/test_lab_packaging.py compares with the sources in git.
//
//   npm ci && npm run build          (production)
//   npm run build -- --development   (source maps, unminified)
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFileSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const require = createRequire(import.meta.url);
const here = dirname(fileURLToPath(import.meta.url));
const output = join(here, '..', 'neural_jupyter', 'labextension');

// Every file the build reads from this folder; keep in step with SOURCES in the test.
export function sourceFiles() {
  const walk = dir =>
    readdirSync(join(here, dir), { withFileTypes: true }).flatMap(entry =>
      entry.isDirectory() ? walk(join(dir, entry.name)) : [join(dir, entry.name)]
    );
  return [
    'build.mjs',
    'package.json',
    'package-lock.json',
    'tsconfig.json',
    ...walk('src'),
    ...walk('style')
  ]
    .map(name => name.split('\\').join('/'))
    .sort();
}

export function sourceHash() {
  const hash = createHash('sha256');
  for (const name of sourceFiles()) {
    hash.update(name + '\0');
    hash.update(readFileSync(join(here, name)));
    hash.update('\0');
  }
  return hash.digest('hex');
}

execFileSync(process.execPath, [require.resolve('typescript/bin/tsc')], { cwd: here, stdio: 'inherit' });
const core = mkdtempSync(join(tmpdir(), 'neural-jupyter-core-'));
try {
  const meta = dirname(require.resolve('@jupyterlab/core-meta/package.json'));
  copyFileSync(join(meta, 'core.package.json'), join(core, 'package.json'));
  const builder = require.resolve('@jupyterlab/builder/lib/build-labextension.js');
  execFileSync(process.execPath, [builder, '--core-path', core, ...process.argv.slice(2), '.'], {
    cwd: here,
    stdio: 'inherit'
  });
} finally {
  rmSync(core, { recursive: true, force: true });
}
const stamp = { sha256: sourceHash(), files: sourceFiles() };
writeFileSync(join(output, 'build-source.json'), JSON.stringify(stamp, null, 2) + '\n');
console.log(`built into ${relative(process.cwd(), output)} (sources ${stamp.sha256.slice(0, 12)})`);
