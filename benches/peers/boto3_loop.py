"""A plain boto3 GetRecords loop, for reference (no leases, no checkpoints).

    python boto3_loop.py --stream S

One thread per shard: an iterator at TRIM_HORIZON, then GetRecords (up to
10,000 records) again at once while records come, every 0.5 s when a call
returns none. Each batch is one line `R SHARD COUNT` on stdout. Runs until
SIGTERM.
"""

import argparse
import signal
import sys
import threading

import boto3

OUT_LOCK = threading.Lock()


def read_shard(client, stream, shard, stop):
    iterator = client.get_shard_iterator(
        StreamName=stream, ShardId=shard, ShardIteratorType="TRIM_HORIZON"
    )["ShardIterator"]
    while iterator and not stop.is_set():
        out = client.get_records(ShardIterator=iterator, Limit=10000)
        iterator = out.get("NextShardIterator")
        n = len(out["Records"])
        if n:
            with OUT_LOCK:
                sys.stdout.write(f"R {shard} {n}\n")
                sys.stdout.flush()
        else:
            stop.wait(0.5)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stream", required=True)
    args = parser.parse_args()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    client = boto3.client("kinesis")
    shards = [s["ShardId"] for s in client.list_shards(StreamName=args.stream)["Shards"]]
    threads = [
        threading.Thread(target=read_shard, args=(client, args.stream, s, stop), daemon=True)
        for s in shards
    ]
    for t in threads:
        t.start()
    while not stop.wait(0.2):
        pass


if __name__ == "__main__":
    main()
