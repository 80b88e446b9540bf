// One lifion-kinesis worker for the peers benchmark (`run` starts it).
//
//     node lifion_worker.js --stream S --app A
//
// The endpoints, region and static credentials come from the standard AWS
// environment variables `run` sets. It polls (lifion-kinesis' default, no
// enhanced fan-out) from TRIM_HORIZON with automatic checkpoints and its
// other defaults; its state lives in the DynamoDB table `<app>-state`. Each
// batch is one line `R SHARD COUNT` on stdout. SIGTERM calls stopConsumer
// (which stops reading; it does not give up its leases) and exits.
'use strict';

const Kinesis = require('lifion-kinesis');

function arg(name) {
  const i = process.argv.indexOf(`--${name}`);
  if (i < 0 || i + 1 >= process.argv.length) {
    process.stderr.write(`missing --${name}\n`);
    process.exit(2);
  }
  return process.argv[i + 1];
}

const app = arg('app');
const credentials = {
  region: process.env.AWS_REGION,
  accessKeyId: process.env.AWS_ACCESS_KEY_ID,
  secretAccessKey: process.env.AWS_SECRET_ACCESS_KEY,
};
const kinesis = new Kinesis({
  ...credentials,
  endpoint: process.env.AWS_ENDPOINT_URL_KINESIS,
  streamName: arg('stream'),
  consumerGroup: app,
  createStreamIfNeeded: false,
  initialPositionInStream: 'TRIM_HORIZON',
  useEnhancedFanOut: false,
  shouldParseJson: false,
  dynamoDb: { ...credentials, endpoint: process.env.AWS_ENDPOINT_URL_DYNAMODB, tableName: `${app}-state` },
  logger: { debug() {}, warn: (m) => process.stderr.write(`warn ${m}\n`), error: (m) => process.stderr.write(`error ${m}\n`) },
});

kinesis.on('data', ({ records, shardId }) => {
  if (records.length > 0) process.stdout.write(`R ${shardId} ${records.length}\n`);
});
kinesis.on('error', (err) => process.stderr.write(`error ${err && err.stack}\n`));

let stopping = false;
function stop() {
  if (stopping) return;
  stopping = true;
  kinesis.stopConsumer();
  setTimeout(() => process.exit(0), 100);
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);

kinesis.startConsumer().catch((err) => {
  process.stderr.write(`could not start: ${err && err.stack}\n`);
  process.exit(1);
});
