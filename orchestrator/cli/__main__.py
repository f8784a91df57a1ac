from orchestrator.cli.commands import app

app()
