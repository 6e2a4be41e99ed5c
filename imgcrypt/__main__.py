from imgcrypt.cli.main import run

run()
