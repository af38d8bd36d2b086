"""HTTP serving: the course grader's API and the OpenAI API over one engine (native or vLLM).

Entry points: `create_app(settings)` (qaforge.serve.app), `qaforge serve` (qaforge.serve.command),
`running_server(...)` (qaforge.serve.launcher). Nothing heavy is imported here.
"""
