from jobplatform.cli import main

main()
