#!/usr/bin/env bash
# Train the pick-and-place policy on a GPU machine of the `device` tool: scripts/device_train.sh pick_place ARGS.
exec "$(dirname "$0")/device_train.sh" pick_place "$@"
