"""`genssl advise DATA`: does semi-supervised learning help on the user's own images, which method, at what cost?

The command (genssl.advise.command) puts genssl's parts together: the user's folders (genssl.data.folder; a test
folder is never read), repeated stratified held-out splits of the labels as the paired "seeds" (splits), a pilot
of each candidate's step cost (pilot), a typicality check of the unlabeled pool (pool_check), a plan that fits
the budget (plan), the grid runner and its executors (genssl.compare.runner), paired statistics
(genssl.compare.stats, in evidence), and a final run on all the labels that `genssl predict` and `genssl export`
accept. report writes the plan and the advice.
"""

from genssl.advise.command import advise
from genssl.advise.folder import AdviseError
from genssl.advise.plan import parse_budget

__all__ = ["AdviseError", "advise", "parse_budget"]
