from pixdeploy.cli import main

main()
