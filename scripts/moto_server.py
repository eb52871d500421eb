"""moto server, with CloudFormation's ExecuteChangeSet finished the way AWS finishes it.

moto 5.2.5 executes a change set by updating the stack's resources only: the stack keeps the
outputs, exports, tags and parameters it had before (none, for a stack created through a change set), and
a stack created by a CREATE change set cannot resolve Fn::ImportValue (it is not given the
account's exports). The deployer creates and updates every stack through change sets, so without
this its stacks would have no outputs under moto. The patch recomputes them after moto's own
execute_change_set; everything else is moto unchanged. Remove it once moto does this itself.

Usage: python scripts/moto_server.py -H 127.0.0.1 -p PORT  (same flags as moto_server)
"""

import sys

from moto.cloudformation import models
from moto.server import main

_execute = models.CloudFormationBackend.execute_change_set


def _find(backend, change_set_name, stack_name):
    if change_set_name in backend.change_sets:
        return backend.change_sets[change_set_name]
    for cs in backend.change_sets.values():
        if cs.change_set_name == change_set_name and stack_name in (None, cs.stack_name, cs.stack_id):
            return cs
    return None


def execute_change_set(self, change_set_name, stack_name=None):
    change_set = _find(self, change_set_name, stack_name)
    if change_set is not None:
        # CreateStack passes the exports; CreateChangeSet(CREATE) does not.
        stack = self.stacks[change_set.stack_id]
        stack.cross_stack_resources = self.exports
        stack.resource_map.cross_stack_resources = self.exports
    _execute(self, change_set_name, stack_name)
    if change_set is None:
        return
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
