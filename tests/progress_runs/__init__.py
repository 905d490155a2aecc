"""Tiny real training runs of each library whose progress lines we recognize. Each script
prints what the library prints, then writes the library's own record of the run (its
history) as JSON to the path given as its first argument, for the tests to compare with."""
