"""An example at the end of each verb's --help: what a user types first."""

from __future__ import annotations

import argparse

EXAMPLES: dict[str, str] = {
    "up": "kiln up            # storage, builder, publisher and NATS on loopback",
    "down": "kiln down",
    "artifact push": "kiln artifact push disk.qcow2 --label team=web --label format=qcow2",
    "artifact ls": "kiln artifact ls --label team=web",
    "artifact show": "kiln artifact show 01K0ZQ7Y3M4N5P6Q7R8S9T0V1W",
    "artifact url": "kiln artifact url 01K0ZQ7Y3M4N5P6Q7R8S9T0V1W --expires 15m",
    "artifact get": "kiln artifact get 01K0ZQ7Y3M4N5P6Q7R8S9T0V1W -o disk.qcow2",
    "artifact rm": "kiln artifact rm 01K0ZQ7Y3M4N5P6Q7R8S9T0V1W",
    "recipe check": "kiln recipe check web.yaml db.yaml",
    "build submit": "kiln build web.yaml --follow      # the same as kiln build submit web.yaml",
    "build ls": "kiln build ls --state failed --name web -n 10",
    "build show": "kiln build show 01K0ZQ7Y3M4N5P6Q7R8S9T0V1W --json | jq .fingerprint",
    "build logs": "kiln build logs 01K0ZQ7Y3M4N5P6Q7R8S9T0V1W --follow",
    "build cancel": "kiln build cancel 01K0ZQ7Y3M4N5P6Q7R8S9T0V1W",
    "publish": "kiln publish 01K0ZQ7Y3M4N5P6Q7R8S9T0V1W --glance prod --marketplace",
    "market search": "kiln market search debian --status valid",
    "market show": "kiln market show GvF2Xdz8e1Kq0H6fJmXo2c5r9tA --json > entry.json",
    "market verify": "kiln market verify --file entry.json --keyring keyring.json",
    "market deprecate": "kiln market deprecate GvF2Xdz8e1Kq0H6fJmXo2c5r9tA",
    "market key create": "kiln market key create ops@example.org -o yaml | kubectl apply -f -",
    "market key ls": "kiln market key ls --json",
    "market key revoke": "kiln market key revoke RQQbDMEembAI-YEa7fyzzRrBQnKKwMKIBVsRIHTPwu8",
    "schedule ls": "kiln schedule ls --json",
    "schedule show": "kiln schedule show 01K0ZQ7Y3M4N5P6Q7R8S9T0V1W",
    "schedule rm": "kiln schedule rm 01K0ZQ7Y3M4N5P6Q7R8S9T0V1W",
    "schedule pause": "kiln schedule pause 01K0ZQ7Y3M4N5P6Q7R8S9T0V1W",
    "schedule resume": "kiln schedule resume 01K0ZQ7Y3M4N5P6Q7R8S9T0V1W",
    "schedule run": "kiln schedule run 01K0ZQ7Y3M4N5P6Q7R8S9T0V1W",
    "schedule runs": "kiln schedule runs 01K0ZQ7Y3M4N5P6Q7R8S9T0V1W",
    "channel ls": "kiln channel ls web",
    "channel set": "kiln channel set web candidate 1.2-7",
    "channel history": "kiln channel history web stable",
    "channel policy": "kiln channel policy web stable --requires candidate --for 24h",
    "channel revoke": "kiln channel revoke web 1.2-7 --descendants --reason CVE-2026-0001",
    "token create": "kiln token create --tenant team-a --role builder --expires 90d",
    "token ls": "kiln token ls --tenant team-a",
    "token revoke": "kiln token revoke 01K0ZQ7Y3M4N5P6Q7R8S9T0V1W",
    "whoami": "kiln whoami",
    "config show": "kiln config show",
    "config use-context": "kiln config use-context prod",
    "completion": "kiln completion bash > /etc/bash_completion.d/kiln",
}


def add_examples(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> None:
    """Puts each verb's example at the end of its --help (verbs by their words)."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        example = EXAMPLES.get(" ".join(path))
        if example and not parser.epilog:
            parser.epilog = f"example:\n  {example}"
            parser.formatter_class = argparse.RawDescriptionHelpFormatter
        return
    for name, verb in subs[0].choices.items():
        add_examples(verb, (*path, name))
