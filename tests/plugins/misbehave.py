#!/usr/bin/env python3
"""A test plugin: the example plugin (examples/plugin-python), misbehaving as the
MISBEHAVE environment variable says. tests/tests/plugins.rs runs it.

  crash-mid-create  the first create writes its object, then the plugin exits 3 unanswered
  hang              the first create never answers
  garbage           the first create is answered with a line that is not JSON
  wrong-id          the first create is answered with another request's id
  wrong-protocol    the handshake says protocol 2
  exit-at-once      exit 0 before reading anything
  log-methods       behave, and append each method received to the file $MISBEHAVE_LOG
"""

import importlib.machinery
import importlib.util
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLE = os.path.join(HERE, "..", "..", "examples", "plugin-python", "clusterform-provider-files")

MODE = os.environ.get("MISBEHAVE", "")
if MODE == "exit-at-once":
    sys.exit(0)

loader = importlib.machinery.SourceFileLoader("files_plugin", EXAMPLE)
spec = importlib.util.spec_from_loader("files_plugin", loader)
files = importlib.util.module_from_spec(spec)
loader.exec_module(files)


class Misbehaving(files.Plugin):
    def handshake(self, params):
        out = super().handshake(params)
        if MODE == "wrong-protocol":
            out["protocol"] = 2
        return out

    def before_store(self, obj):
        pass

    def handle(self, msg):
        method = msg.get("method")
        if MODE == "log-methods" and method:
            with open(os.environ["MISBEHAVE_LOG"], "a") as f:
                f.write(method + "\n")
        if method != "create":
            return super().handle(msg)
        if MODE == "hang":
            files.log("hanging on purpose")
            while True:
                time.sleep(60)
        answer = super().handle(msg)
        if MODE == "crash-mid-create":
            files.log("crashing on purpose")
            os._exit(3)
        if MODE == "garbage":
            sys.stdout.write("this is not json\n")
            sys.stdout.flush()
            return None
        if MODE == "wrong-id" and answer is not None:
            answer["id"] = answer["id"] + 1000
        return answer


if __name__ == "__main__":
    files.main(Misbehaving())
