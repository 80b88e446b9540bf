// Runs a Lambda-style handler (`exports.handler = async (event) => ...`)
// for `rkcl consume --exec`, the way Lambda's runtime would:
//
//   node runner.js HANDLER.js              one event on stdin, the result on stdout
//   node runner.js HANDLER.js --per-lane   one event per line, one result per line
//
// The handler's console output goes to stderr, so stdout holds results only.
'use strict';
const path = require('path');
const readline = require('readline');

const { handler } = require(path.resolve(process.argv[2]));
const perLane = process.argv.includes('--per-lane');
console.log = console.error;
console.info = console.error;

const answer = (result) => process.stdout.write(JSON.stringify(result ?? null) + '\n');

if (perLane) {
  if (process.env.PIDS) require('fs').appendFileSync(process.env.PIDS, `${process.pid}\n`);
  const lines = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
  (async () => {
    for await (const line of lines) {
      if (!line.trim()) continue;
      try {
        answer(await handler(JSON.parse(line)));
      } catch (err) {
        console.error(`handler failed: ${err.message}`);
        answer({ errorType: err.name, errorMessage: err.message });
      }
    }
  })();
} else {
  let input = '';
  process.stdin.setEncoding('utf8');
  process.stdin.on('data', (chunk) => { input += chunk; });
  process.stdin.on('end', async () => {
    try {
      answer(await handler(JSON.parse(input)));
    } catch (err) {
      console.error(`handler failed: ${err.message}`);
      process.exitCode = 1;
    }
  });
}
