"""tether: align language models with human preferences.

Importing tether is cheap: heavy modules (torch models, trainers, web app) load
only when their subpackage is imported.
"""

__version__ = "0.1.0"
