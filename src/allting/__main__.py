from allting.cli import app

app()
