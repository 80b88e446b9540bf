"""Writes N records of a fixed size with a plain boto3 PutRecords loop, for
the producer bench.

The bench (``crates/rkcl-cli/benches/producer.rs``) runs this script in the
virtual environment it makes for aiokpl, where ``boto3`` is installed too:

    python boto3_put_records.py --endpoint URL --stream S --records N \
        --size BYTES [--threads T]

The region and the static credentials come from the standard AWS
environment variables the bench sets. Each of ``--threads`` threads has a
client of its own and writes its share of the records in PutRecords calls
of 500 (partition key: the record's index in decimal), re-sending the
entries a call failed, with no aggregation and no rate limiting. A record's
put-to-receipt latency is the time from building its call to the answer.

Lines on stdout, each flushed at once:

    first                       the first call is about to be made
    done COUNT SECONDS P50 P99  every record is written: COUNT records,
                                SECONDS from the first call to the last
                                answer, latency percentiles in milliseconds

After ``done`` the script waits for a line (or the end of input) on stdin,
so the bench can read this process' CPU time while it still runs.
"""

import argparse
import os
import sys
import threading
import time

import boto3

BATCH = 500


def report(*fields):
    print(*fields, flush=True)


def percentile(values, q):
    if not values:
        return "-"
    values = sorted(values)
    return f"{values[round((len(values) - 1) * q)]:.1f}"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--stream", required=True)
    parser.add_argument("--records", type=int, required=True)
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()

    payload = b"x" * args.size
    clients = [
        boto3.client(
            "kinesis",
            endpoint_url=args.endpoint,
            region_name=os.environ["AWS_REGION"],
            aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
        )
        for _ in range(args.threads)
    ]
    written = [0] * args.threads
    latencies = [[] for _ in range(args.threads)]

    def write_share(thread):
        client = clients[thread]
        indices = range(thread, args.records, args.threads)
        for start in range(0, len(indices), BATCH):
            built = time.monotonic()
            entries = [
                {"Data": payload, "PartitionKey": str(index)}
                for index in indices[start : start + BATCH]
            ]
            while entries:
                answer = client.put_records(StreamName=args.stream, Records=entries)
                if answer.get("FailedRecordCount", 0) == 0:
                    written[thread] += len(entries)
                    break
                failed = []
                for entry, outcome in zip(entries, answer["Records"]):
                    if "ErrorCode" in outcome:
                        failed.append(entry)
                    else:
                        written[thread] += 1
                entries = failed
                time.sleep(0.1)
            latency = (time.monotonic() - built) * 1000.0
            latencies[thread].append(latency)

    threads = [
        threading.Thread(target=write_share, args=(thread,))
        for thread in range(args.threads)
    ]
    report("first")
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    # Every record of a call waited as long as its call.
    all_latencies = [
        value
        for thread in range(args.threads)
        for value in latencies[thread]
    ]
    report(
        "done",
        sum(written),
        f"{elapsed:.3f}",
        percentile(all_latencies, 0.5),
        percentile(all_latencies, 0.99),
    )
    sys.stdin.readline()


if __name__ == "__main__":
    main()
