#!/usr/bin/env python3
"""A record processor speaking the MultiLangDaemon protocol by hand, for the
protocol's edge cases. No dependencies.

Usage: scripted_child.py OUT_DIR FLAG...

Every event is appended to OUT_DIR/<shard id>.jsonl as one JSON object.
Flags:
  checkpoint_in_initialize  ask for a checkpoint during initialize
  checkpoint_inside         in the first batch, checkpoint at the first
                            record with subSequenceNumber 1, then at the
                            batch's first record (behind it)
  noise                     print lines that are no messages
  crash_once_at=N           exit mid-batch at the N-th record a child sees,
                            once over all children
  hang_once                 never answer the first batch, once
  wrong_status_once         answer the first batch with a status for
                            another action, once
"""

import json
import os
import sys
import time

OUT = sys.argv[1]
FLAGS = sys.argv[2:]
shard = "unknown"
batches = 0
seen = 0


def flag_value(name):
    for flag in FLAGS:
        if flag.startswith(name + "="):
            return int(flag.split("=", 1)[1])
    return None


def log(event):
    with open(os.path.join(OUT, shard + ".jsonl"), "a") as out:
        out.write(json.dumps(event) + "\n")


def send(message):
    # As amazon-kclpy and aws-kcl write: a newline before and after.
    sys.stdout.write("\n" + json.dumps(message) + "\n")
    sys.stdout.flush()


def receive():
    while True:
        line = sys.stdin.readline()
        if not line:
            sys.exit(0)
        if line.strip():
            return json.loads(line)


def checkpoint(during, sequence_number, sub_sequence_number):
    request = {"action": "checkpoint", "sequenceNumber": sequence_number}
    if sub_sequence_number is not None:
        request["subSequenceNumber"] = sub_sequence_number
    send(request)
    answer = receive()
    assert answer["action"] == "checkpoint", answer
    log({"event": "checkpoint", "during": during, "sequenceNumber": sequence_number,
         "subSequenceNumber": sub_sequence_number, "error": answer.get("error")})


def once(name):
    """True the first time any child asks for `name`."""
    try:
        os.close(os.open(os.path.join(OUT, name + ".once"), os.O_CREAT | os.O_EXCL))
        return True
    except FileExistsError:
        return False


def records_seen(count):
    """Adds `count` to the records this child has seen; the new total."""
    global seen
    seen += count
    return seen


def process(message):
    global batches
    batches += 1
    records = message["records"]
    if "hang_once" in FLAGS and once("hang"):
        log({"event": "hanging"})
        time.sleep(3600)
    crash_at = flag_value("crash_once_at")
    for record in records:
        assert record["action"] == "record", record
        if crash_at is not None and records_seen(1) >= crash_at and once("crash"):
            log({"event": "crashing"})
            os._exit(3)
        log({"event": "record", "sequenceNumber": record["sequenceNumber"],
             "subSequenceNumber": record["subSequenceNumber"],
             "partitionKey": record["partitionKey"], "data": record["data"]})
    if "noise" in FLAGS:
        print("processing a batch of", len(records), "records")
        print("")
        print('{"not": "a message"}')
        sys.stdout.flush()
    if "checkpoint_inside" in FLAGS and batches == 1:
        inside = [r for r in records if r["subSequenceNumber"] == 1]
        if inside:
            checkpoint("processRecords", inside[0]["sequenceNumber"], 1)
            checkpoint("processRecords", records[0]["sequenceNumber"], 0)


def main():
    global shard
    while True:
        message = receive()
        action = message["action"]
        if action == "initialize":
            shard = message["shardId"]
            log({"event": "initialize", "sequenceNumber": message["sequenceNumber"],
                 "subSequenceNumber": message["subSequenceNumber"]})
            if "checkpoint_in_initialize" in FLAGS:
                checkpoint("initialize", None, None)
        elif action == "processRecords":
            process(message)
        elif action in ("shutdownRequested", "shardEnded"):
            log({"event": action})
            checkpoint(action, None, None)
        else:
            log({"event": action})
        if action == "processRecords" and "wrong_status_once" in FLAGS and once("wrong"):
            log({"event": "wrong-status"})
            action = "initialize"
        send({"action": "status", "responseFor": action})


if __name__ == "__main__":
    main()
