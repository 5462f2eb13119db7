"""Every AWS call the sidecar makes is allowed by a role deploy/ ships.

Finds the SDK operations the sidecar's source calls (`.describe_user()` in a file that
uses `aws_sdk_identitystore`), turns each into its IAM action with the IAM action list
cfn-lint ships, and fails naming every action no template under deploy/ grants. So a
new AWS call cannot land without its permission, and the roles cannot silently fall
behind the code. Run with the deploy virtualenv's python (scripts/deploy-check.sh).
"""

import json
import pathlib
import re
import sys

import cfnlint

# the SDK crate of each client the sidecar builds, and its IAM service prefix
PREFIXES = {
    "dynamodb": "dynamodb",
    "identitystore": "identitystore",
    "sagemaker": "sagemaker",
    "sts": "sts",
    "verifiedpermissions": "verifiedpermissions",
}
# operations authorized by an action of another name
RENAMED = {("verifiedpermissions", "batch_get_policy"): "GetPolicy"}
# files whose calls no deployed role makes: `authz-sidecar avp push` runs in the
# pipeline that publishes policies, with that pipeline's own credentials (README)
NOT_DEPLOYED = {"sidecar/src/avp/push.rs", "sidecar/src/cli/avp.rs"}

root = pathlib.Path(__file__).resolve().parent.parent
policies = json.loads(
    (pathlib.Path(cfnlint.__file__).parent / "data/AdditionalSpecs/Policies.json").read_text()
)

called = {}  # action -> first file calling it
for path in sorted((root / "sidecar/src").rglob("*.rs")):
    relative = path.relative_to(root).as_posix()
    if relative in NOT_DEPLOYED:
        continue
    text = path.read_text()
    # a `#[cfg(test)] mod tests` at the end holds mocks, not calls
    text = text.split("#[cfg(test)]\nmod tests", 1)[0]
    crates = set(re.findall(r"\baws_sdk_([a-z0-9]+)", text))
    for crate in crates & PREFIXES.keys():
        prefix = PREFIXES[crate]
        actions = policies[prefix]["Actions"]
        for name in set(re.findall(r"\.([a-z][a-z0-9_]*)\(\)", text)):
            camel = RENAMED.get((prefix, name)) or "".join(part.capitalize() for part in name.split("_"))
            if camel.lower() in actions:
                called.setdefault(f"{prefix}:{camel}", relative)

granted = set()
for template in (root / "deploy").rglob("*.yaml"):
    granted |= {m.lower() for m in re.findall(r"\b[a-z0-9-]+:[A-Z][A-Za-z0-9]+\b", template.read_text())}

missing = sorted(a for a in called if a.lower() not in granted)
if not called:
    sys.exit("found no AWS calls in sidecar/src: the scan is broken")
for action in sorted(called):
    print(f"  {action:45} {called[action]}")
if missing:
    sys.exit("no template under deploy/ allows: " + ", ".join(f"{a} ({called[a]})" for a in missing))
print(f"{len(called)} actions called, each allowed by a template under deploy/")
