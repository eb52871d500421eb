"""moto server, with CloudFormation's ExecuteChangeSet finished the way AWS finishes it.

moto 5.2.5 executes a change set by updating the stack's resources only: the stack keeps the
outputs, exports, tags and parameters it had before (none, for a stack created through a change set), and
a stack created by a CREATE change set cannot resolve Fn::ImportValue (it is not given the
account's exports). The deployer creates and updates every stack through change sets, so without
this its stacks would have no outputs under moto. The patch recomputes them after moto's own
execute_change_set; everything else is moto unchanged. Remove it once moto does this itself.

Two more faults of moto's execute_change_set, both seen under fault injection and at scale:
- It looks a change set up by name alone, ignoring StackName, and takes the last change set of
  that name in the account: when two stacks have change sets of the same name (legal on AWS,
  names are per stack), executing one runs the other's. With 8-16 service stacks applied at
  once this ran one service's change set twice ("The specified log group already exists") or
  against the wrong stack ("No export named ... found"). The patch resolves the change set by
  name *and* stack and hands moto its unique ARN.
- Executing a change set twice (an SDK retry after a lost response) re-applies it. AWS refuses
  with InvalidChangeSetStatus; so does the patch, so the client sees what it would see on AWS.

Usage: python scripts/moto_server.py -H 127.0.0.1 -p PORT  (same flags as moto_server)
"""

import sys
import threading

from moto.cloudformation import models
from moto.cloudformation.exceptions import CloudFormationError
from moto.server import main


class InvalidChangeSetStatusException(CloudFormationError):
    code = "InvalidChangeSetStatus"


# moto finds an error's service (for its wire format) from the exception's module.
InvalidChangeSetStatusException.__module__ = "moto.cloudformation.exceptions"

_execute = models.CloudFormationBackend.execute_change_set


def _find(backend, change_set_name, stack_name):
    if change_set_name in backend.change_sets:
        return backend.change_sets[change_set_name]
    for cs in backend.change_sets.values():
        if cs.change_set_name == change_set_name and stack_name in (None, cs.stack_name, cs.stack_id):
            return cs
    return None


# moto_server serves requests on threads; one execution at a time keeps the status check
# above atomic and the account's export table consistent.
_lock = threading.Lock()


def execute_change_set(self, change_set_name, stack_name=None):
    with _lock:
        _execute_one(self, change_set_name, stack_name)


def _execute_one(self, change_set_name, stack_name):
    change_set = _find(self, change_set_name, stack_name)
    if change_set is None:
        # moto itself would fail with UnboundLocalError (an HTML 500) here.
        raise InvalidChangeSetStatusException(f"ChangeSet [{change_set_name}] does not exist")
    if change_set.execution_status != "AVAILABLE":
        raise InvalidChangeSetStatusException(
            f"ChangeSet [{change_set.change_set_id}] cannot be executed in its current "
            f"execution status of [{change_set.execution_status}]"
        )
    # CreateStack passes the exports; CreateChangeSet(CREATE) does not.
    stack = self.stacks[change_set.stack_id]
    stack.cross_stack_resources = self.exports
    stack.resource_map.cross_stack_resources = self.exports
    # The ARN is unique: moto's own lookup by name may pick another stack's change set.
    change_set.execution_status = "EXECUTE_IN_PROGRESS"
    try:
        _execute(self, change_set.change_set_id, stack_name)
    except Exception:
        change_set.execution_status = "EXECUTE_FAILED"
        raise
    old_exports = {e.name for e in stack.exports}
    stack.template = change_set.template
    stack._parse_template()
    # moto keeps the parameters the stack was created with, so a later change set back to
    # those values (a rollback) is wrongly judged "no changes".
    stack.parameters = change_set.parameters
    if change_set.tags is not None:
        stack.tags = change_set.tags
    stack.output_map = stack._create_output_map()
    new_exports = {e.name: e for e in stack.exports}
    for name in old_exports - set(new_exports):
        self.exports.pop(name, None)
    self.exports.update(new_exports)


models.CloudFormationBackend.execute_change_set = execute_change_set

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
