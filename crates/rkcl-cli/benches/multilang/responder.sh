#!/bin/sh
# The smallest MultiLangDaemon child: answers every call with its status and
# never checkpoints. The memory bench runs one per shard.
while IFS= read -r line; do
  case "$line" in
    *'"action":"initialize"'*) action=initialize ;;
    *'"action":"processRecords"'*) action=processRecords ;;
    *'"action":"leaseLost"'*) action=leaseLost ;;
    *'"action":"shardEnded"'*) action=shardEnded ;;
    *'"action":"shutdownRequested"'*) action=shutdownRequested ;;
    *) continue ;;
  esac
  printf '{"action":"status","responseFor":"%s"}\n' "$action"
done
