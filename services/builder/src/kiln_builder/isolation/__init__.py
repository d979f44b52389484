"""Where a recipe's own code runs, and what holds it there:

  sandbox   bubblewrap on the build host (`isolation: sandbox`), with
  network   its own network namespace and the build's egress proxy,
  cgroups   memory and process limits,
  seccomp   the system-call filter,
  userns    a user namespace mapped far from host uids;
  appliance the appliance VM (`isolation: vm`): the recipe's steps in a
            throwaway guest that hands the tree back as a tar.

docs/security.md and docs/isolation.md say what each allows and forbids."""
