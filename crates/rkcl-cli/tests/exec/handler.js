// A Lambda-style Kinesis handler for the tests of `rkcl consume --exec`.
// It appends each record's data as a line to $OUT, all of a batch at once
// (so a failed batch writes nothing), and is told by the environment how to
// misbehave:
//   SEEN        append each batch's data as a JSON array (what was sent)
//   POISON      throw on a batch holding this record
//   FAIL_ONCE   the first time this record comes: handle the records before
//               it and name it in batchItemFailures ($MARKER remembers)
//   CRASH_ONCE  the first time this record comes: exit at once ($MARKER)
'use strict';
const fs = require('fs');

exports.handler = async (event) => {
  const env = process.env;
  const records = event.Records.map((r) => ({
    id: r.kinesis.sequenceNumber,
    data: Buffer.from(r.kinesis.data, 'base64').toString('utf8'),
  }));
  if (env.SEEN) fs.appendFileSync(env.SEEN, JSON.stringify(records.map((r) => r.data)) + '\n');
  if (env.POISON && records.some((r) => r.data === env.POISON)) {
    throw new Error('a poison record');
  }
  const done = [];
  for (const record of records) {
    if (record.data === env.FAIL_ONCE && !fs.existsSync(env.MARKER)) {
      fs.writeFileSync(env.MARKER, '');
      fs.appendFileSync(env.OUT, done.join(''));
      return { batchItemFailures: [{ itemIdentifier: record.id }] };
    }
    if (record.data === env.CRASH_ONCE && !fs.existsSync(env.MARKER)) {
      fs.writeFileSync(env.MARKER, '');
      console.error('crashing on purpose');
      process.exit(3);
    }
    done.push(record.data + '\n');
  }
  fs.appendFileSync(env.OUT, done.join(''));
  return {};
};
