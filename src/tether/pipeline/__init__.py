"""`tether pipeline`: the whole loop as resumable stages keyed by their inputs."""
