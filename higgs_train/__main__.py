from higgs_train.cli import main

main()
