"""What ends with a task: `ends` (TaskEnds: every instance learns of a task's end, and what the
task holds open closes with it) and `retention` (the sweeper: tasks nobody ended are expired, ended
tasks and their trails are forgotten when their time is up). Below stages/, approvals/ and routes/,
which use them; above stores/ and audit/."""
