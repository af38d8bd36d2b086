from scripts.bench_train.runner import main

main()
