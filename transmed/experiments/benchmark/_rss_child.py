"""`python -m transmed.experiments.benchmark._rss_child REQUEST_JSON`: one point of the RSS scale in a fresh process.

Prints the result as one JSON line (the last line of stdout). Started by `loader.run_rss_child`.
"""

import json
import sys

from .loader import rss_child

if __name__ == "__main__":
    print(json.dumps(rss_child(json.loads(sys.argv[1]))), flush=True)
