// Validate an AsyncAPI document with the official parser (@asyncapi/parser).
//
//   node tests/node/validate_asyncapi.mjs docs/asyncapi.yaml
//
// Prints one JSON object on stdout:
//   {"file", "parser", "asyncapi", "ok", "errors", "warnings", "diagnostics": [...]}
// Exit status: 0 when no diagnostic has error severity, 1 when one does (or the document
// cannot be parsed at all), 2 on a usage problem. Used by tests/bus/test_asyncapi.py.
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { resolve } from 'node:path';

import { DiagnosticSeverity, Parser, fromFile } from '@asyncapi/parser';

const SEVERITY = {
  [DiagnosticSeverity.Error]: 'error',
  [DiagnosticSeverity.Warning]: 'warning',
  [DiagnosticSeverity.Information]: 'information',
  [DiagnosticSeverity.Hint]: 'hint',
};

function parserVersion() {
  const require = createRequire(import.meta.url);
  const pkg = require.resolve('@asyncapi/parser/package.json');
  return JSON.parse(readFileSync(pkg, 'utf8')).version;
}

async function main(argv) {
  if (argv.length !== 1) {
    process.stderr.write('usage: node validate_asyncapi.mjs FILE\n');
    return 2;
  }
  const file = resolve(argv[0]);
  const parser = new Parser();
  const { document, diagnostics } = await fromFile(parser, file).parse();
  const out = diagnostics.map((d) => ({
    severity: SEVERITY[d.severity] ?? String(d.severity),
    code: String(d.code),
    message: d.message,
    path: d.path.join('/'),
    line: d.range ? d.range.start.line + 1 : null,
  }));
  const errors = out.filter((d) => d.severity === 'error').length;
  const ok = document !== undefined && errors === 0;
  const report = {
    file,
    parser: parserVersion(),
    asyncapi: document ? document.version() : null,
    ok,
    errors,
    warnings: out.filter((d) => d.severity === 'warning').length,
    diagnostics: out,
  };
  process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
  return ok ? 0 : 1;
}

main(process.argv.slice(2)).then(
  (code) => { process.exitCode = code; },
  (err) => {
    process.stderr.write(`${err && err.stack ? err.stack : err}\n`);
    process.exitCode = 1;
  },
);
