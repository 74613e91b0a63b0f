# chart.gp: events/s per workload and size.
# gnuplot -e "dat='results.dat'; png='results.png'; ncols=3" chart.gp
set terminal pngcairo size 900,500 noenhanced
set output png
set title 'aggr throughput beside the raw PostgreSQL ceiling (events/s, same run)'
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set datafile missing '-'
set key top right autotitle columnheader
set xtics rotate by -20
set ylabel 'events/s'
set yrange [0:*]
plot for [i=2:ncols] dat using i:xtic(1)
