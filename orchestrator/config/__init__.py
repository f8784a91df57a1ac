"""The job: its typed spec, how it is read, and the checks that need its layout."""
